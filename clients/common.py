"""What every client role needs: the experiment config from the message, its partition and its data."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message

from fedgen.config import ExperimentConfig
from fedgen.data import Federation, load_federation

EXPERIMENT_KEY = "experiment"


def experiment(msg: Message) -> ExperimentConfig:
    """The experiment config the server sent (JSON under config['experiment'])."""
    config: ConfigRecord = msg.content.config_records.get("config", ConfigRecord())
    if EXPERIMENT_KEY not in config:
        raise ValueError(f"message has no config['{EXPERIMENT_KEY}']: the server must send the experiment config")
    return ExperimentConfig.from_json(str(config[EXPERIMENT_KEY]))


def partition_id(context: Context, cfg: ExperimentConfig) -> int:
    """This node's partition, from its node config ('partition-id', 'num-partitions')."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("node config has no 'partition-id': start the SuperNode with --node-config 'partition-id=K'")
    pid = int(node["partition-id"])
    n = int(node.get("num-partitions", cfg.data.num_clients))
    if n != cfg.data.num_clients:
        raise ValueError(f"node has num-partitions={n} but the experiment has data.num_clients={cfg.data.num_clients}")
    return pid


def client_data(msg: Message, context: Context) -> tuple[ExperimentConfig, Federation, int]:
    cfg = experiment(msg)
    return cfg, load_federation(cfg.data, cfg.seed), partition_id(context, cfg)


def server_round(msg: Message) -> int:
    return int(msg.content.config_records.get("config", ConfigRecord()).get("server-round", 0))
