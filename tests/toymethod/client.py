"""The toy method's client role: the mean pixel of the client's training images (times ``scale``), and how many."""

from flwr.app import Message, MetricRecord, RecordDict

from clients.common import client_data
from fedgen.wire import NUM_EXAMPLES
from toymethod.strategy import VALUE


def answer(msg: Message, context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    value = float(data.images.mean()) / 255 * float(cfg.strategy.scale)
    return Message(RecordDict({"metrics": MetricRecord({VALUE: value, NUM_EXAMPLES: len(data)})}), reply_to=msg)
