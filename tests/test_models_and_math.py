import numpy as np
import torch
from torch import nn

from fedgen import feddyn
from fedgen.models import build_model
from fedgen.train import proximal_penalty


def test_models_by_name_and_norm():
    x = torch.randn(2, 3, 32, 32)
    cnn = build_model("cnn", 10)
    assert cnn(x).shape == (2, 10) and sum(p.numel() for p in cnn.parameters()) < 500_000
    res = build_model("resnet18", 7, norm="group")
    assert res(x).shape == (2, 7)
    assert res.conv1.kernel_size == (3, 3) and res.conv1.stride == (1, 1) and isinstance(res.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in res.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in res.modules())
    assert build_model("cnn", 3, image_size=16)(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_proximal_penalty_value_and_gradient():
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    pen = proximal_penalty([torch.zeros(1, 3)], mu=0.5)(model)
    assert pen.item() == 0.25 * 14
    pen.backward()
    assert torch.allclose(model.weight.grad, 0.5 * model.weight.detach())


def test_feddyn_server_update_matches_the_paper():
    w = {"p": torch.tensor([1.0, 1.0]), "bn": torch.tensor([0.0])}
    clients = [{"p": torch.tensor([2.0, 0.0]), "bn": torch.tensor([1.0])},
               {"p": torch.tensor([4.0, 2.0]), "bn": torch.tensor([3.0])}]
    h0 = {"p": torch.zeros(2, dtype=torch.float64)}
    alpha, m = 0.1, 4
    new, h = feddyn.server_update(w, clients, h0, alpha, m)
    # h = 0 - alpha/m * ((1,-1) + (3,1)) = -(0.1/4) * (4, 0)
    assert torch.allclose(h["p"], torch.tensor([-0.1, 0.0], dtype=torch.float64))
    # theta = mean (3, 1) - h / alpha = (3, 1) + (1, 0)
    assert torch.allclose(new["p"], torch.tensor([4.0, 1.0]))
    assert torch.allclose(new["bn"], torch.tensor([2.0])) and "bn" not in h  # buffers: plain mean
    # the correction accumulates across rounds
    new2, h2 = feddyn.server_update(new, [new, new], h, alpha, m)
    assert torch.allclose(h2["p"], h["p"]) and torch.allclose(new2["p"], new["p"] - h["p"].float() / alpha)


def test_feddyn_client_terms():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    glob = [torch.tensor([[1.0, 1.0]])]
    grad = [torch.tensor([[0.5, -1.0]])]
    value = feddyn.client_penalty(glob, grad, alpha=0.2)(model)
    # -<g, theta> + alpha/2 ||theta - glob||^2 = -(0.5 - 3) + 0.1 * 4
    assert abs(value.item() - 2.9) < 1e-6
    new = feddyn.client_state_update(grad, [model.weight.detach()], glob, alpha=0.2)
    assert torch.allclose(new[0], torch.tensor([[0.5, -1.4]]))


def test_training_leaves_the_process_wide_rng_alone():
    """fit() draws its shuffle from a generator of its own: the server and in-process clients share torch's RNG."""
    from fedgen.data.images import ImageSet
    from fedgen.train import fit

    data = ImageSet(np.zeros((20, 8, 8, 3), np.uint8), np.arange(20) % 10, np.zeros(20, np.int64))
    kwargs = dict(epochs=1, batch_size=8, lr=0.1, momentum=0.0, weight_decay=0.0, device=torch.device("cpu"), seed=7)
    a, b = build_model("cnn", 10, image_size=8), build_model("cnn", 10, image_size=8)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fit(a, data, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)
    fit(b, data, **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_deterministic_switch_sets_torchs_algorithms_and_sets_them_back():
    import os

    import torch

    from fedgen.train import resolve_device

    assert resolve_device("cpu", deterministic=True) == torch.device("cpu")
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    resolve_device("cpu")
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
