"""The toy methods' client side: Toy's role (the mean pixel of the client's training images, times ``scale``, and
how many), and Shrink's term in the task's local training."""

from flwr.app import Message, MetricRecord, RecordDict

from clients.common import client_data
from fedgen.wire import NUM_EXAMPLES
from toymethod.strategy import VALUE


def answer(msg: Message, context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    value = float(data.images.mean()) / 255 * float(cfg.strategy.scale)
    return Message(RecordDict({"metrics": MetricRecord({VALUE: value, NUM_EXAMPLES: len(data)})}), reply_to=msg)


def shrink_term(update) -> None:
    """(shrink / 2) * ||w||^2 over the trainable parameters, from the experiment the message carries."""
    weight = float(client_data(update.msg, update.context)[0].strategy.shrink)
    update.penalties.append(lambda model: weight / 2 * sum((p**2).sum() for p in model.parameters()))
