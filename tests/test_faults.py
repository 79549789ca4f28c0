"""Faulty clients, malformed replies and resuming, against every strategy that aggregates client replies."""

import json
import time

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from inprocess import InProcessGrid

from clients import common, finetune
from simulations.loop import RoundFailed
from simulations.server_app import run_experiment

FAULTS = ["raise", "timeout", "nan", "shape", "dtype", "missing", "num-examples"]


def faulty_app(faults: dict[int, str], delay: float = 5.0) -> ClientApp:
    """The real finetune role, but partition k misbehaves in training as ``faults[k]`` says."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = finetune.train(msg, context)
        fault = faults.get(int(context.node_config["partition-id"]))
        if fault is None:
            return reply
        if fault == "raise":
            raise RuntimeError("disk on fire")
        if fault == "timeout":
            time.sleep(delay)
            return reply
        state = reply.content["arrays"].to_torch_state_dict()
        first = next(iter(state))
        if fault == "nan":
            state[first] = torch.full_like(state[first], float("nan"))
        elif fault == "shape":
            state[first] = torch.zeros(3, 3)
        elif fault == "dtype":
            state[first] = state[first].double()
        elif fault == "missing":
            del reply.content["arrays"]
            return reply
        elif fault == "num-examples":
            reply.content["metrics"]["num-examples"] = 10**9
            return reply
        reply.content["arrays"] = ArrayRecord(state)
        return reply

    app.evaluate()(finetune.evaluate)
    app.query()(common.query)
    return app


EXPECTED = {"raise": "disk on fire", "timeout": "no reply within", "nan": "NaN or Inf", "shape": "expected",
            "dtype": "float64", "missing": "missing record 'arrays'", "num-examples": "exceeds the"}


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "feddyn"])
def test_bad_clients_are_rejected_and_the_round_completes(strategy, tiny_cfg, tmp_path):
    """Partition 0 is healthy; partitions 1..7 each fail in one way. Only partition 0's update is aggregated."""
    faults = dict(enumerate(FAULTS, start=1))
    cfg = tiny_cfg(rounds=1, data={"num_clients": 8},
                   strategy={"name": strategy, "min_train_clients": 1, "round_timeout_s": 4.0})
    summary = run_experiment(InProcessGrid(faulty_app(faults), 8), cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["final_accuracy"] > 0.3
    got = {f["client"]: f for f in summary["failures"]}
    assert set(got) == set(faults)
    for k, fault in faults.items():
        assert got[k]["round"] == 1 and got[k]["kind"] == "train"
        assert EXPECTED[fault] in got[k]["reason"], (fault, got[k]["reason"])
    model = torch.load(tmp_path / "run" / "model.pt")
    assert all(torch.isfinite(v.float()).all() for v in model.values())


def test_below_the_minimum_the_run_stops_with_a_clear_message(tiny_cfg, tmp_path):
    cfg = tiny_cfg(rounds=2, strategy={"min_train_clients": 3})
    with pytest.raises(RoundFailed, match=r"round 1: only 2 of 3 sampled clients .*min_train_clients=3.*disk on fire"):
        run_experiment(InProcessGrid(faulty_app({0: "raise"}), 3), cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds"] == 0  # round 0 (the initial model) was kept


class Interrupt(Exception):
    pass


class InterruptingGrid(InProcessGrid):
    """Dies like a killed server in its ``die_at_call``-th exchange, after delivering the first message only."""

    def __init__(self, *args, die_at_call: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.die_at_call = 0, die_at_call

    def send_and_receive(self, messages, *, timeout=None):
        self.calls += 1
        if self.calls == self.die_at_call:
            super().send_and_receive(list(messages)[:1], timeout=timeout)
            raise Interrupt
        return super().send_and_receive(messages, timeout=timeout)


def _interrupted_in_round_2(strategy, cfg, out, monkeypatch):
    from clients.app import app
    from strategies.local import LocalOnly

    if strategy == "local":  # sends no messages: die inside round 2's server-side training instead
        original = LocalOnly.aggregate_train

        def dying(self, server_round, replies):
            if server_round == 2:
                raise Interrupt
            return original(self, server_round, replies)

        monkeypatch.setattr(LocalOnly, "aggregate_train", dying)
        grid = InProcessGrid(app, cfg.data.num_clients)
    else:  # exchange 1 is the partition query (GPT-FL's: then its label query), then one training exchange per round
        grid = InterruptingGrid(app, cfg.data.num_clients, die_at_call=4 if strategy == "gptfl" else 3)
    with pytest.raises(Interrupt):
        run_experiment(grid, cfg, out)
    monkeypatch.undo()


@pytest.mark.parametrize("strategy", ["feddyn", "scaffold", "fedadam", "feddf", "gptfl", "local",
                                      "moon-diffusion"])  # MOON's client state: on the diffusion task (CI time)
def test_resume_gives_the_same_final_model_as_an_uninterrupted_run(strategy, tiny_cfg, tiny_models, tmp_path,
                                                                   monkeypatch):
    """The strategy's state and the clients' (FedDyn's g_k, SCAFFOLD's c and c_i, MOON's previous models, FedAdam's
    moments; FedDF's groups and seeded distillation; GPT-FL's pre-trained start, not made again) survive an
    interruption in round 2: the resumed run ends where the whole one did."""
    from clients.app import app

    name, _, task = strategy.partition("-")
    diffusion = dict(task="diffusion", diffusion={"unet": "tiny", "image_size": 16, "batch_size": 64},
                     evaluation={"samples_per_class": 2, "sampling_steps": 2, "every": 2, "reference_epochs": 1,
                                 "cache_dir": str(tmp_path / "ref")}) if task else {}
    own = {"feddf": {"architectures": ["cnn", "resnet8"], "max_steps": 10, "eval_every": 5},
           "gptfl": {"labels": "plain", "images_per_class": 3, "pretrain_epochs": 1}}.get(name, {})
    foundation = {"foundation": {"profile": "pretrained", "generator": {"path": str(tiny_models / "sd"), "steps": 2,
                                                                       "size": 32}}} if name == "gptfl" else {}
    # 2 clients a round, of 12 (a twelfth of the pool each: a third of the training 2 of 4 would do); Local trains
    # every client on the server each round, so more clients only add their evaluations: 4
    n = 4 if name == "local" else 12
    cfg = tiny_cfg(rounds=2, data={"num_clients": n}, deterministic=True,  # exact on a GPU too
                   strategy={"name": name, "fraction_train": 2 / n, "min_train_clients": 2, **own}, **diffusion,
                   **foundation)
    whole = run_experiment(InProcessGrid(app, n), cfg, tmp_path / "whole")
    assert torch.are_deterministic_algorithms_enabled()  # the server and the clients (here, this process) set it
    _interrupted_in_round_2(name, cfg, tmp_path / "broke", monkeypatch)
    cut = json.loads((tmp_path / "broke" / "summary.json").read_text())
    assert cut["status"] == "failed" and cut["rounds"] == 1
    # a new federation (new node ids, fresh client contexts): client state must come from the clients' disks
    resumed = run_experiment(InProcessGrid(app, n, seed=9), cfg, tmp_path / "broke", resume=True)
    name = {"local": "client_models.pt", "diffusion": "unet.pt"}.get(task or strategy, "model.pt")
    a, b = torch.load(tmp_path / "whole" / name), torch.load(tmp_path / "broke" / name)
    if strategy in ("local", "feddf"):  # a model per client, per group
        a, b = [v for m in a.values() for v in m.values()], [v for m in b.values() for v in m.values()]
    else:
        a, b = list(a.values()), list(b.values())
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    rows = [json.loads(r) for r in (tmp_path / "broke" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert resumed["final"] == whole["final"] and resumed["status"] == "finished"
    if name == "gptfl":  # round 0's figures, read back from its row
        assert resumed["gptfl"] == whole["gptfl"] and resumed["gptfl"]["synthetic-images"] == 30
    if task:  # a generative run: FID, lower is better, scored in rounds 0 and 2
        assert resumed["metric"]["higher_is_better"] is False and resumed["final_scores"] == whole["final_scores"]
        assert [r[resumed["metric"]["name"]] is None for r in rows] == [False, True, False]
        assert (tmp_path / "broke" / "samples" / "round-002.png").exists()
    # the same clients sampled, the same bytes (folder names of one length: the config carries the path); the
    # resumed run's partition query is not counted again
    assert (tmp_path / "broke" / "bytes.csv").read_text() == (tmp_path / "whole" / "bytes.csv").read_text()
    assert (resumed["bytes_up"], resumed["bytes_down"]) == (whole["bytes_up"], whole["bytes_down"])


@pytest.mark.parametrize("strategy", ["fedavg", "fedddpm"])
def test_a_long_tail_run_resumes_exactly(strategy, tiny_cfg, tmp_path, monkeypatch):
    """LDMLR's federated classifier with its feature diffusion (FedAvg) and FedDDPM's feature denoiser with the
    server's correction steps and head (non-private: a private client charges its ledger for the round the
    interruption cut, and so may refuse when it is repeated), interrupted in round 2: the resumed run ends where the
    whole one did."""
    from test_fedddpm import _cfg as fedddpm_cfg
    from test_ldmlr import _cfg as ldmlr_cfg

    from clients.app import app

    sampled = {"fraction_train": 0.5, "min_train_clients": 2}
    cfg = fedddpm_cfg(tiny_cfg, {}, **sampled) if strategy == "fedddpm" else \
        ldmlr_cfg(tiny_cfg, strategy).model_copy(update={"rounds": 2})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_clients": 4}), "deterministic": True,
                                 "strategy": cfg.strategy.model_copy(update=sampled)})
    whole = run_experiment(InProcessGrid(app, 4), cfg, tmp_path / "whole")
    _interrupted_in_round_2(strategy, cfg, tmp_path / "broke", monkeypatch)
    resumed = run_experiment(InProcessGrid(app, 4, seed=9), cfg, tmp_path / "broke", resume=True)
    a, b = torch.load(tmp_path / "whole" / "model.pt"), torch.load(tmp_path / "broke" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_scores"] == whole["final_scores"] and resumed["status"] == "finished"
    assert (tmp_path / "broke" / "bytes.csv").read_text() == (tmp_path / "whole" / "bytes.csv").read_text()
