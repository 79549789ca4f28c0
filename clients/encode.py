"""The encode role (OSCAR): caption every local training image, encode each caption with the generator's own text
encoder, average per class, and upload only those category encodings with their class ids.

No image, caption or model weight leaves the client.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message

from clients.common import client_data
from fedgen import foundation, oscar
from fedgen.train import resolve_device


def encode(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    paths = foundation.resolve(cfg.foundation)  # prepared by the server (simulation) or on this machine beforehand
    device = resolve_device(cfg.device, cfg.deterministic)
    dtype = str(foundation.torch_dtype(cfg.foundation.dtype, device)).removeprefix("torch.")
    t0 = time.perf_counter()
    captioner = foundation.captioner(paths.captioner, paths.captioner_kind, str(device), dtype)
    captions = captioner.caption(data.images, cfg.foundation.captioner.batch_size,
                                 cfg.foundation.captioner.max_new_tokens)
    t1 = time.perf_counter()
    encodings = foundation.text_encoder(paths.generator, str(device), dtype).encode(captions)
    content = oscar.reply_content(oscar.class_means(encodings, data.labels), cfg.strategy.encoding_dtype,
                                  caption_seconds=t1 - t0, encode_seconds=time.perf_counter() - t1)
    return Message(content=content, reply_to=msg)
