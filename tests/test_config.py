import pytest

from fedgen.config import ConfigError, apply_overrides, load_config, load_suite, validate

CONFIGS = "simulations/configs"


def test_defaults_validate():
    cfg = validate({})
    assert cfg.data.dataset == "digits-domains" and cfg.strategy.name == "fedavg"


@pytest.mark.parametrize(
    "tree, key",
    [
        ({"data": {"bogus": 1}}, "data.bogus: unknown key"),
        ({"rounds": "many"}, "rounds: Input should be a valid integer"),
        ({"rounds": 0}, "rounds: Input should be greater than 0"),
        ({"data": {"partition": {"alpha": 0}}}, "data.partition.alpha: Input should be greater than 0"),
        ({"data": {"partition": {"kind": "zipf"}}}, "data.partition.kind"),
        ({"strategy": {"name": "fedsgd"}}, "strategy.name"),
        ({"data": {"dataset": "folder"}}, "data.path is required"),
        ({"strategy": {"min_train_clients": 7}}, "exceeds data.num_clients=6"),
    ],
)
def test_bad_values_name_the_key(tree, key):
    with pytest.raises(ConfigError) as err:
        validate(tree)
    assert key in str(err.value)


@pytest.mark.parametrize("clients, fraction, minimum, sampled", [(6, 0.3, 2, 2), (6, 0.5, 2, 3), (10, 0.25, 1, 2),
                                                                  (6, 0.1, 2, 2), (7, 1.0, 2, 7)])
def test_the_sample_size_is_flowers(clients, fraction, minimum, sampled):
    """max(int(n * fraction), min): a fraction that rounds below the minimum is accepted, as Flower accepts it."""
    from fedgen.compat.flower import sample_size

    cfg = validate({"data": {"num_clients": clients, "partition": {"kind": "iid"}},
                    "strategy": {"fraction_train": fraction, "min_train_clients": minimum}})
    assert sample_size(cfg.data.num_clients, cfg.strategy.fraction_train, cfg.strategy.min_train_clients) == sampled


def test_overrides_are_parsed_as_yaml_and_nested():
    tree = apply_overrides({"data": {"num_clients": 6}}, ["data.partition.alpha=0.1", "rounds=3", "ray.address=auto"])
    cfg = validate(tree)
    assert cfg.data.partition.alpha == 0.1 and cfg.rounds == 3 and cfg.ray.address == "auto"
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["rounds"])
    with pytest.raises(ConfigError, match="'rounds' is not a section"):
        apply_overrides({"rounds": 3}, ["rounds.x=1"])


def test_load_config_from_file_and_missing_file(tmp_path):
    cfg = load_config(f"{CONFIGS}/digits_domains.yaml", ["strategy.name=feddyn"])
    assert cfg.strategy.name == "feddyn" and cfg.data.partition.kind == "domain"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_json_round_trip():
    cfg = validate({"seed": 7, "strategy": {"name": "fedprox", "proximal_mu": 0.1}})
    assert type(cfg).from_json(cfg.to_json()) == cfg


def test_suites_validate_every_run_up_front(tmp_path):
    suite, runs = load_suite(f"{CONFIGS}/suite_all.yaml")
    assert set(runs) == {"Local", "FedAvg", "FedDyn", "Centralized", "OSCAR", "FedDF", "GPT-FL"}
    assert {r[0].strategy.name for r in runs.values()} == {"local", "fedavg", "feddyn", "centralized", "oscar", "feddf",
                                                           "gptfl"}
    assert suite.target == "FedAvg" and suite.seeds == [0, 1, 2]
    default, default_runs = load_suite(f"{CONFIGS}/suite_default.yaml")  # make run: a subset, the very same runs
    assert len(default.seeds) >= 3 and set(default_runs) < set(runs)
    assert all(default_runs[m] == runs[m] for m in default_runs)
    assert runs["OSCAR"][0].rounds == 1 and runs["OSCAR"][0].foundation.profile == "embedded"
    (tmp_path / "base.yaml").write_text("rounds: 2\n")
    (tmp_path / "suite.yaml").write_text("base: base.yaml\nseeds: [0, 1]\nmethods:\n  A: [strategy.name=fedavg]\n"
                                         "  B: [strategy.proximal_mu=-1]\n")
    with pytest.raises(ConfigError, match="(?s)method 'B' seed 0.*strategy.proximal_mu"):
        load_suite(tmp_path / "suite.yaml")
    (tmp_path / "target.yaml").write_text("base: base.yaml\ntarget: C\nmethods:\n  A: [strategy.name=fedavg]\n")
    with pytest.raises(ConfigError, match="target 'C' is not one of the methods"):
        load_suite(tmp_path / "target.yaml")


def test_a_method_may_bring_its_own_yaml_but_not_other_data(tmp_path):
    (tmp_path / "base.yaml").write_text("rounds: 2\n")
    (tmp_path / "own.yaml").write_text("rounds: 1\nstrategy: {name: fedprox}\n")
    (tmp_path / "other.yaml").write_text("data: {num_clients: 3}\n")
    (tmp_path / "suite.yaml").write_text("base: base.yaml\nmethods:\n  A: [strategy.name=fedavg]\n"
                                         "  B: {base: own.yaml, set: [strategy.proximal_mu=0.5]}\n")
    _, runs = load_suite(tmp_path / "suite.yaml")
    assert runs["B"][0].strategy.name == "fedprox" and runs["B"][0].strategy.proximal_mu == 0.5
    assert runs["B"][0].rounds == 1 and runs["A"][0].rounds == 2
    (tmp_path / "bad.yaml").write_text("base: base.yaml\nmethods:\n  A: []\n  C: {base: other.yaml}\n")
    with pytest.raises(ConfigError, match="method 'C' uses other data settings"):
        load_suite(tmp_path / "bad.yaml")


def test_oscar_is_one_shot_and_the_embedded_profile_needs_its_benchmark():
    with pytest.raises(ConfigError, match="rounds must be 1"):
        validate({"strategy": {"name": "oscar"}, "rounds": 3})
    with pytest.raises(ConfigError, match="foundation.generator.size must be 32"):
        validate({"strategy": {"name": "oscar"}, "rounds": 1})
    with pytest.raises(ConfigError, match="embedded is trained on digits-domains"):
        validate({"strategy": {"name": "oscar"}, "rounds": 1, "foundation": {"generator": {"size": 32}},
                  "data": {"dataset": "cifar10"}})


def test_a_key_of_another_strategy_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"strategy.feddyn_alpha: unknown key for this strategy \(it belongs to "
                                          r"feddyn\)"):
        validate({"strategy": {"name": "fedavg", "feddyn_alpha": 0.1}})
    assert validate({"strategy": {"name": "feddyn", "feddyn_alpha": 0.1}}).strategy.feddyn_alpha == 0.1
    with pytest.raises(ConfigError,
                       match="strategy.name: unknown strategy 'fedsgd'; choose from centralized, fedadam, fedavg"):
        validate({"strategy": {"name": "fedsgd"}})
    with pytest.raises(ConfigError, match="oscar: unknown key .strategy 'oscar' is configured in the strategy "
                                          "section"):
        validate({"strategy": {"name": "oscar"}, "rounds": 1, "oscar": {"epochs": 3}})


def test_every_registered_method_has_a_config_section_and_every_section_a_method():
    from fedgen.config import SECTIONS
    from strategies import methods

    METHODS = methods()  # noqa: N806

    assert set(METHODS) == set(SECTIONS)
    assert all(METHODS[n].section is SECTIONS[n] for n in METHODS)


def test_validating_an_oscar_config_imports_no_diffusion_library():
    import subprocess
    import sys

    code = ("import sys; from fedgen.config import load_config; "
            f"load_config('{CONFIGS}/oscar_digits.yaml'); load_config('{CONFIGS}/oscar_real.yaml'); "
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_shipped_experiment_and_suite_validates():
    from pathlib import Path

    paths = sorted(Path(CONFIGS).glob("*.yaml"))
    for path in paths:  # each raises ConfigError on a bad key, value or combination
        if path.name.startswith("suite_"):
            suite, runs = load_suite(path)
            assert set(runs) == set(suite.methods)
            assert all(set(by_seed) == set(suite.seeds) for by_seed in runs.values()), path
        else:
            assert load_config(path).rounds >= 1, path
    assert {"suite_default.yaml", "suite_all.yaml", "suite_variance.yaml", "digits_domains.yaml"} <= {
        p.name for p in paths}


def test_init_seed_moves_the_initial_model_alone_and_the_summary_says_what_each_draw_came_from(tiny_cfg, tmp_path):
    import json

    import torch
    from inprocess import InProcessGrid

    from clients.app import app
    from fedgen.train import randomness
    from simulations.server_app import run_experiment

    def run(name, **top):
        cfg = tiny_cfg(rounds=1, data={"num_clients": 12}, strategy={"fraction_train": 0.25}, **top)  # 3 of 12
        summary = run_experiment(InProcessGrid(app, 12), cfg, tmp_path / name)
        return summary, torch.load(tmp_path / name / "model.pt")

    a, model_a = run("a", seed=0, init_seed=5)
    b, model_b = run("b", seed=1, init_seed=5)  # other data order and splits, the same initial model
    c, model_c = run("c", seed=0, init_seed=6)  # seed 0's data order, another initial model
    rows = {n: [json.loads(x) for x in (tmp_path / n / "rounds.jsonl").read_text().splitlines()] for n in "abc"}
    assert rows["a"][0]["loss"] == rows["b"][0]["loss"] != rows["c"][0]["loss"]  # round 0 scores the initial model
    assert not all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    again, model_again = run("again", seed=0, init_seed=5)
    assert all(torch.equal(model_a[k], model_again[k]) for k in model_a) and again["final"] == a["final"]
    assert b["randomness"]["seed"] == 1 and "torch.manual_seed(5) (init_seed)" in b["randomness"]["initial_model"]
    assert randomness(3, None, 0)["initial_model"] == "torch.manual_seed(3), before anything else is drawn"
    assert "1 * 100003 + round * 1009" in b["randomness"]["client_training"]
