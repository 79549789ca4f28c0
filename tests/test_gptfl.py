"""GPT-FL: the additive IBLT, its secure sum under Flower's SecAgg+, prompts and generation, and whole runs."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
from inprocess import InProcessGrid

from clients.app import app
from fedgen import gptfl
from fedgen.comm import ByteLedger
from fedgen.compat.flower import RECORD_KEY_CONFIGS, bytes_to_ndarray
from fedgen.compat.flower import SecAggKey as Key
from fedgen.config import ConfigError
from fedgen.data import load_federation
from fedgen.privacy import iblt
from simulations.grid import AccountedGrid
from simulations.server_app import run_experiment
from strategies.gptfl import collect_plain, collect_private

NAMES = [f"label {i} " + "x" * (i % 17) for i in range(200)]


def _client_sets(n_labels: int, n_clients: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    labels = NAMES[:n_labels]
    return [rng.sample(labels, rng.randint(1, n_labels)) for _ in range(n_clients)]


# --- the IBLT ---------------------------------------------------------------------------------------------------------
def iblt_sum(tables, spec):
    """The cell-wise sum mod p (what SecAgg+ computes in a run): the table of the multiset union."""
    total = np.zeros(spec.shape, dtype=np.int64)
    for t in tables:
        assert t.shape == spec.shape
        total = (total + t) % spec.prime
    return total


def t5_prompt_model(words: list[str], width: int = 16):
    """A T5 text-to-text model (the official GPT-FL prompt writer's family) with a word-level tokenizer over
    ``words``: (model, tokenizer), to save and load back through from_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) - set(specials)))}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=2 * width, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config), tokenizer


@pytest.mark.parametrize("n_labels,n_clients", [(1, 2), (7, 2), (10, 50), (50, 13), (120, 7), (200, 50)])
def test_iblt_round_trip_recovers_the_union_with_multiplicities(n_labels, n_clients):
    spec = iblt.spec_for(n_labels, n_clients)
    sets = _client_sets(n_labels, n_clients, seed=n_labels * 100 + n_clients)
    found, _ = iblt.decode_with_retries(lambda sp: iblt_sum([iblt.encode(s, sp) for s in sets], sp), spec)
    assert found == gptfl.union(sets)


@pytest.mark.statistical
def test_iblt_decodes_at_its_capacity_with_high_probability():
    """At capacity, over 200 hash seeds: one try fails rarely (keys sharing every cell), three tries ~never."""
    sets = _client_sets(50, 13, seed=0)
    fails = 0
    for seed in range(200):
        spec = iblt.spec_for(50, 13, seed=seed)
        try:
            iblt.decode(iblt_sum([iblt.encode(s, spec) for s in sets], spec), spec)
        except iblt.DecodeError:
            fails += 1
    assert fails / 200 < 0.12  # about n**2 / (2 m**3) = 4.6% expected here


def test_iblt_sizes_are_as_specified():
    spec = iblt.spec_for(100, 50, key_bytes=64)
    assert spec.cells_per_partition == int(1.1 * 1.222 * 100 / 3 + 10) == 54
    assert spec.shape == (3 * 54, 1 + spec.chunks + 1)
    assert 256 ** spec.chunk_bytes <= spec.prime
    assert 50 * 2 * (spec.prime - 1) < 2 ** 32  # SecAgg+'s 32-bit sum of 50 tables stays exact
    assert iblt.spec_for(100, 200).chunk_bytes == 2  # a smaller field for more clients


def test_iblt_is_linear():
    """The cell-wise sum of the clients' tables is the table of the multiset union (count-weighted rows)."""
    spec = iblt.spec_for(30, 5)
    sets = _client_sets(30, 5, seed=1)
    expected = np.zeros(spec.shape, dtype=np.int64)
    for name, count in gptfl.union(sets).items():
        for cell in spec.cells_of(name.encode()):
            expected[cell] = (expected[cell] + count * spec.row(name.encode())) % spec.prime
    assert np.array_equal(iblt_sum([iblt.encode(s, spec) for s in sets], spec), expected)


def test_iblt_peel_failure_is_reported_with_a_size_that_works():
    spec = iblt.Spec(capacity=5, prime=iblt.spec_for(5, 4).prime, key_bytes=64, chunk_bytes=3)
    sets = _client_sets(120, 4, seed=3)
    with pytest.raises(iblt.DecodeError, match="capacity 5") as err:
        iblt.decode(iblt_sum([iblt.encode(s, spec) for s in sets], spec), spec)
    assert err.value.needed >= len(gptfl.union(sets))
    bigger = iblt.Spec(err.value.needed, spec.prime, 64, 3)
    assert iblt.decode(iblt_sum([iblt.encode(s, bigger) for s in sets], bigger), bigger) == gptfl.union(sets)


def test_iblt_refuses_a_label_longer_than_its_keys():
    with pytest.raises(ValueError, match="at most 8 bytes"):
        iblt.encode(["a label that is far too long"], iblt.spec_for(10, 4, key_bytes=8))


# --- the secure sum, over SecAgg+ with the real ClientApp -------------------------------------------------------------
@pytest.fixture
def secagg_setup(tiny_cfg):
    def make(num_clients=5, **strategy):
        cfg = tiny_cfg(data={"num_clients": num_clients, "partition": {"kind": "dirichlet", "alpha": 0.1}},
                       strategy={"name": "gptfl", "label_capacity": 20, **strategy},
                       foundation={"profile": "pretrained", "generator": {"size": 32}})
        inner = InProcessGrid(app, num_clients)
        grid = AccountedGrid(inner, ByteLedger())
        grid.discover(cfg.to_json(), num_clients, 30)
        fed = load_federation(cfg.data, cfg.seed)
        sets = [gptfl.label_names(fed.client(k)[0].labels, fed.class_names) for k in range(num_clients)]
        return SimpleNamespace(cfg=cfg), grid, inner, sets

    return make


def test_secagg_recovers_the_union_and_never_sees_a_table(secagg_setup):
    ctx, grid, inner, sets = secagg_setup()
    found, clients, asked = collect_private(ctx, grid)
    assert found == gptfl.union(sets) and clients == asked == 5
    assert len({frozenset(s) for s in sets}) > 1  # Dirichlet 0.1: the clients' label sets differ
    # every array the server received: SecAgg+'s masked vectors; none is a client's table, clear or shifted
    spec = iblt.spec_for(20, 5, 64, ctx.cfg.seed)
    tables = [iblt.encode(s, spec).ravel() for s in sets]
    received = []
    for reply in inner.received:
        assert all(all(a.numpy().size == 0 for a in rec.values()) for rec in reply.content.array_records.values())
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
        received += [bytes_to_ndarray(b).ravel() for b in configs.get(Key.MASKED_PARAMETERS, [])]
    received = [v for v in received if v.size == tables[0].size]  # beside each: its masked weight, one number
    assert len(received) == 5
    for vec in received:
        for table in tables:
            assert not np.array_equal(vec, table) and not np.array_equal(vec, table + spec.prime - 1)
            assert np.mean(vec == table) < 0.5  # masks cover the zero cells too


def test_secagg_survives_a_client_dropping_out_mid_protocol(secagg_setup, monkeypatch, caplog):
    """Client 2 disappears after the key exchange, when it should send its masked table: the server still gets the
    union of the other four (its masks are reconstructed from its neighbours' shares), counts 4 of the 5 asked and
    warns that the union lacks the labels only the dropped client holds."""
    from clients import gptfl as role

    original = role.label_table

    def dying(config, context):
        if int(context.node_config["partition-id"]) == 2:
            raise ConnectionError("node lost")
        return original(config, context)

    monkeypatch.setattr(role, "label_table", dying)
    ctx, grid, _, sets = secagg_setup()
    with caplog.at_level("WARNING", logger="fedgen"):
        found, clients, asked = collect_private(ctx, grid)
    assert (clients, asked) == (4, 5)
    assert found == gptfl.union(sets[:2] + sets[3:])
    assert [r.getMessage() for r in caplog.records if "covers" in r.getMessage()] == [
        "GPT-FL's label union covers 4 of the 5 clients asked: labels only the others hold are missing"]
    assert [f["client"] for f in grid.failures] == [2]


def test_a_secure_round_counts_the_clients_its_mean_covers_against_those_asked(secagg_setup, monkeypatch, caplog):
    """Under secure_updates, client 2 fails its training inside SecAgg+: the mean is the other four's, and the
    round's figures and a warning say so."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord

    from clients import secure
    from fedgen.models import build_model
    from strategies.gptfl import SecureUpdates

    original = secure._train_update

    def dying(msg, fitins, config, context):
        if int(context.node_config["partition-id"]) == 2:
            raise ConnectionError("node lost")
        return original(msg, fitins, config, context)

    monkeypatch.setattr(secure, "_train_update", dying)
    ctx, grid, _, _ = secagg_setup(labels="plain")
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model("cnn", 10).state_dict())
    updates = SecureUpdates(1.0, 5, 1000, 8.0, 1.0, 0.6, 600)
    with caplog.at_level("WARNING", logger="fedgen"):
        _, metrics = updates.round(1, arrays, ConfigRecord({"experiment": ctx.cfg.to_json()}), grid, 0.0)
    assert dict(metrics) == {"secure-clients": 4, "secure-clients-asked": 5}
    assert "round 1: the secure mean covers 4 of the 5 clients asked" in caplog.text


def test_the_table_is_never_sent_outside_secagg(secagg_setup):
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients import gptfl as role

    ctx, _, _, _ = secagg_setup()
    node = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 5}, state=RecordDict(),
                   run_config={})
    with pytest.raises(PermissionError, match="only sent masked"):
        role.label_table(ConfigRecord({"experiment": ctx.cfg.to_json(), "iblt-spec": "[20, 101, 64, 1, 0]"}), node)


def test_private_and_plain_collection_agree_and_plain_rejects_bad_replies(secagg_setup, monkeypatch):
    ctx, grid, _, sets = secagg_setup(labels="plain")
    found, clients, asked = collect_plain(ctx, grid)
    assert found == gptfl.union(sets) and clients == asked == 5
    from clients import gptfl as role

    original = role.labels

    def lying(msg, context):
        reply = original(msg, context)
        if int(context.node_config["partition-id"]) == 4:
            reply.content["labels"]["label-names"] = ["zebra"]
        return reply

    monkeypatch.setattr(role, "labels", lying)
    ctx, grid, _, sets = secagg_setup(labels="plain")
    from strategies.gptfl import GptFL

    grid.checks.update(GptFL(None, load_federation(ctx.cfg.data, 0).class_names).reply_checks())
    found, clients, asked = collect_plain(ctx, grid)
    assert (clients, asked) == (4, 5) and found == gptfl.union(sets[:4])
    assert "zebra" in grid.failures[0]["reason"]


# --- prompts and generation -------------------------------------------------------------------------------------------
def test_prompt_writer_loads_a_t5_from_a_directory(tmp_path):
    import torch


    model, tokenizer = t5_prompt_model("a photo of the digit seven on a black background".split())
    model.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    writer = gptfl.PromptWriter(str(tmp_path / "t5"), torch.device("cpu"))
    state = torch.random.get_rng_state()
    prompts = writer.write("seven", 6, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the run's RNG is left alone
    assert 0 < len(prompts) <= 6 and len(set(prompts)) == len(prompts) and all(isinstance(p, str) for p in prompts)
    assert prompts == writer.write("seven", 6, seed=0)
    with pytest.raises(FileNotFoundError, match="cannot load the prompt tokenizer"):
        gptfl.PromptWriter(str(tmp_path / "missing"), torch.device("cpu"))


def test_plan_cycles_prompts_and_draws_integer_guidance():
    texts, labels, scales = gptfl.plan({3: ["a", "b"], 7: ["c"]}, 5, (1, 5), np.random.default_rng(0))
    assert texts == ["a", "b", "a", "b", "a", "c", "c", "c", "c", "c"]
    assert labels.tolist() == [3] * 5 + [7] * 5
    big = gptfl.plan({0: ["a"]}, 5000, (1, 5), np.random.default_rng(0))[2]
    assert set(big.tolist()) == {1, 2, 3, 4, 5} and all(np.abs(np.bincount(big.astype(int))[1:] / 5000 - 0.2) < 0.03)


def test_generation_with_a_guidance_scale_per_image(tiny_models):
    import torch

    from fedgen import foundation

    gen = foundation.Generator(str(tiny_models / "sd"), "dpm", torch.device("cpu"), torch.float32)
    embeds = foundation.TextEncoder(str(tiny_models / "sd"), torch.device("cpu"), torch.float32).encode(["a", "b"])
    same = gen.generate(embeds, 3, 2, 2.0, 32, 4, seed=0, progress=False)
    assert np.array_equal(same, gen.generate(embeds, 3, 2, np.full(6, 2.0), 32, 4, seed=0, progress=False))
    mixed = gen.generate(embeds, 3, 2, np.array([1.0, 5, 1, 5, 1, 5]), 32, 4, seed=0, progress=False)
    assert mixed.shape == same.shape and not np.array_equal(mixed, same)


def test_config_errors_name_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match="guidance_min=4 exceeds strategy.guidance_max=2"):
        tiny_cfg(strategy={"name": "gptfl", "guidance_min": 4, "guidance_max": 2})
    with pytest.raises(ConfigError, match="templates: every template needs"):
        tiny_cfg(strategy={"name": "gptfl", "templates": ["a photo"]})
    with pytest.raises(ConfigError, match="embedded is trained on digits-domains"):
        tiny_cfg(data={"dataset": "cifar10"}, strategy={"name": "gptfl"})


# --- whole runs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", ["private", "plain"])
def test_gptfl_run_pretrains_then_fine_tunes(labels, tiny_cfg, tiny_models, tmp_path):
    cfg = tiny_cfg(
        rounds=1, data={"num_clients": 4, "partition": {"kind": "dirichlet", "alpha": 0.3}},
        strategy={"name": "gptfl", "labels": labels, "fraction_evaluate": 1.0, "images_per_class": 6,
                  "pretrain_epochs": 3, "pretrain_lr": 0.05, "label_capacity": 20},
        foundation={"profile": "pretrained",
                    "generator": {"path": str(tiny_models / "sd"), "steps": 2, "size": 32, "scheduler": "dpm"}},
    )
    grid = InProcessGrid(app, 4)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert summary["status"] == "finished"
    fed = load_federation(cfg.data, cfg.seed)
    held = gptfl.union(gptfl.label_names(fed.client(k)[0].labels, fed.class_names) for k in range(4))
    record = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert record["labels"] == held and record["mode"] == labels
    assert summary["gptfl"]["synthetic-images"] == 6 * len(held)
    assert "label_histograms" not in summary and "label-histogram" not in json.dumps(summary)
    queries = [m for m in grid.delivered if m.metadata.message_type == "query"]
    assert all("facts" not in m.content["config"] for m in queries)  # the partition query asks for no labels
    rows = [json.loads(r) for r in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert rows[0]["round"] == 0 and rows[0]["gptfl/labels"] == len(held)  # round 0: the pre-trained model
    assert rows[0]["gptfl/label-clients"] == rows[0]["gptfl/label-clients-asked"] == 4
    if labels == "private":  # only SecAgg+'s stages and the fine-tuning carried 'train' messages
        train = [m for m in grid.delivered if m.metadata.message_type == "train"]
        assert sum(RECORD_KEY_CONFIGS in m.content.config_records for m in train) == 4 * 4
    assert any(m.metadata.message_type == "query.labels" for m in grid.delivered) == (labels == "plain")
    assert (tmp_path / "run" / "synthetic.png").stat().st_size > 0
    _only_what_gptfl_needs_left(grid)


SECAGG_REPLY_KEYS = {  # SecAgg+'s own reply of each stage: public keys, encrypted shares, the masked vector, shares
    Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST, Key.MASKED_PARAMETERS,
    Key.NODE_ID_LIST, Key.SHARE_LIST}


def _only_what_gptfl_needs_left(grid):
    from test_registry import EXPECTED_KEYS

    sent = {m.metadata.message_id: m for m in grid.delivered}
    seen: dict[str, set] = {}
    for reply in grid.received:
        out = sent[reply.metadata.reply_to_message_id]
        kind, content = out.metadata.message_type, reply.content
        if RECORD_KEY_CONFIGS in out.content.config_records:  # a SecAgg+ stage
            assert set(content[RECORD_KEY_CONFIGS].keys()) <= SECAGG_REPLY_KEYS
            assert all(a.numpy().size == 0 for rec in content.array_records.values() for a in rec.values())
            others = {name: dict(rec) for name, rec in content.config_records.items() if name != RECORD_KEY_CONFIGS}
            assert all(rec in ({}, {"code": 0, "message": "ok"}) for rec in others.values())  # metrics, status
            assert all(dict(rec) == {"num_examples": 1} for rec in content.metric_records.values())
            continue
        assert list(content.metric_records) == ["metrics"]
        assert set(content.config_records) == ({"labels"} if kind == "query.labels" else set())
        seen.setdefault(kind, set()).update(content["metrics"].keys())
    assert seen == {k: v for k, v in EXPECTED_KEYS["gptfl"].items() if k in seen}
    assert {"query", "train"} <= set(seen)


def test_fine_tuning_under_secagg_matches_plain_fedavg(tiny_cfg, tiny_models, tmp_path):
    """secure_updates: the server learns the round's weighted mean only, and it is FedAvg's up to SecAgg+'s
    quantisation (2**22 levels over +-8). One round: from the second on, local training from the two slightly different
    models drifts apart (measured here: up to ~1e-2 per weight after two rounds)."""
    import torch

    models = {}
    for secure in (False, True):
        cfg = tiny_cfg(
            rounds=1, data={"num_clients": 4, "partition": {"kind": "dirichlet", "alpha": 0.5}},
            strategy={"name": "gptfl", "labels": "plain", "images_per_class": 4, "pretrain_epochs": 1,
                      "secure_updates": secure, "fraction_train": 0.75},
            foundation={"profile": "pretrained",
                        "generator": {"path": str(tiny_models / "sd"), "steps": 2, "size": 32}},
        )
        grid = InProcessGrid(app, 4)
        run = tmp_path / f"secure-{secure}"
        assert run_experiment(grid, cfg, run)["status"] == "finished"
        models[secure] = torch.load(run / "model.pt")
        if secure:
            trains = [r for r in grid.received if r.metadata.reply_to_message_id in
                      {m.metadata.message_id for m in grid.delivered if m.metadata.message_type == "train"}]
            assert len(trains) == 4 * 3  # 4 SecAgg+ stages, 3 of 4 clients sampled (the same 3 as FedAvg's)
            assert all(a.numpy().size == 0 for r in trains for rec in r.content.array_records.values()
                       for a in rec.values())  # no model came back in the clear
            rows = [json.loads(r) for r in (run / "rounds.jsonl").read_text().splitlines()]
            assert rows[1]["train/secure-clients"] == rows[1]["train/secure-clients-asked"] == 3
            assert rows[1]["bytes_up"] > 0  # SecAgg+'s traffic is counted in its own round
    floats = [k for k, v in models[False].items() if v.is_floating_point()]
    assert max(float((models[True][k] - models[False][k]).abs().max()) for k in floats) < 1e-4
