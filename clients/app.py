"""The ClientApp: routes each message type to a client role.

train            -> finetune.train     (local training of the classifier; FedAvg, FedProx, FedDyn)
evaluate         -> finetune.evaluate  (the global model on the local test split)
query            -> finetune.query     (partition id and label histogram)
train.encode     -> encode.encode      (OSCAR: per-class caption encodings)
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import encode, finetune

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return finetune.train(msg, context)


@app.train("encode")
def train_encode(msg: Message, context: Context) -> Message:
    return encode.encode(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return finetune.evaluate(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return finetune.query(msg, context)
