"""What every client role needs (the experiment config from the message, its partition and its data), and the
partition query every client answers."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedgen.config import ExperimentConfig
from fedgen.data import Federation, load_federation
from fedgen.wire import (
    EXPERIMENT,
    LABEL_HISTOGRAM,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    NUM_TEST_EXAMPLES,
    PARTITION_ID,
    QUERY_FACTS,
    SERVER_ROUND,
)


def experiment(msg: Message | ConfigRecord) -> ExperimentConfig:
    """The experiment config the server sent (JSON under config['experiment']), from a message or its config."""
    config = msg if isinstance(msg, ConfigRecord) else msg.content.config_records.get("config", ConfigRecord())
    if EXPERIMENT not in config:
        raise ValueError(f"message has no config['{EXPERIMENT}']: the server must send the experiment config")
    return ExperimentConfig.from_json(str(config[EXPERIMENT]))


def partition_id(context: Context, cfg: ExperimentConfig) -> int:
    """This node's partition, from its node config ('partition-id', 'num-partitions')."""
    node = context.node_config
    if PARTITION_ID not in node:
        raise ValueError("node config has no 'partition-id': start the SuperNode with --node-config 'partition-id=K'")
    pid = int(node[PARTITION_ID])
    n = int(node.get(NUM_PARTITIONS, cfg.data.num_clients))
    if n != cfg.data.num_clients:
        raise ValueError(f"node has {NUM_PARTITIONS}={n} but the experiment has "
                         f"data.num_clients={cfg.data.num_clients}")
    return pid


def client_data(msg: Message | ConfigRecord, context: Context) -> tuple[ExperimentConfig, Federation, int]:
    cfg = experiment(msg)
    return cfg, load_federation(cfg.data, cfg.seed), partition_id(context, cfg)


def server_round(msg: Message) -> int:
    return int(msg.content.config_records.get("config", ConfigRecord()).get(SERVER_ROUND, 0))


def query(msg: Message, context: Context) -> Message:
    """Every client's answer to the partition query: its partition id and example counts, and the facts the
    strategy asked for ('facts'); nothing else leaves."""
    cfg, fed, pid = client_data(msg, context)
    data, test = fed.client(pid)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(data), NUM_TEST_EXAMPLES: len(test)})
    for fact in msg.content["config"].get(QUERY_FACTS, []):
        if fact != LABEL_HISTOGRAM:
            raise ValueError(f"unknown client fact {fact!r} asked by the server")
        metrics[LABEL_HISTOGRAM] = [int(v) for v in data.label_histogram(fed.num_classes)]
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
