"""MoFO (module=mofo, mllmft/optim/mofo.py): AdamW exactly at fraction 1, the authors' momentum filter
otherwise (a reference written from their AdamW_MoFO), and the whole-tensor rule enforced at start-up."""

import pytest
import torch

from mllmft import api
from mllmft.errors import ConfigError
from mllmft.optim import MoFO


def _steps(make, steps=5, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(16, 12)
    optimizer = make(net.parameters())
    for _ in range(steps):
        net(torch.randn(4, 16)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in net.parameters()]


def test_fraction_one_is_adamw_bit_for_bit():
    mofo = _steps(lambda ps: MoFO(ps, lr=1e-2, weight_decay=0.1, fraction=1.0))
    adamw = _steps(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))
    assert all(torch.equal(a, b) for a, b in zip(mofo, adamw))


def test_a_step_moves_only_the_top_momentum_entries_as_the_authors_rule():
    lr, beta1, beta2, eps, decay, fraction = 1e-2, 0.9, 0.999, 1e-8, 0.05, 0.25

    def reference(params):  # AdamW_MoFO's step, written out (per tensor; 1-D tensors whole)
        state = {}

        class Reference:
            def step(self):
                for p in params:
                    s = state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                    s["t"] += 1
                    p.data.mul_(1 - lr * decay)
                    s["m"] = beta1 * s["m"] + (1 - beta1) * p.grad
                    s["v"] = beta2 * s["v"] + (1 - beta2) * p.grad**2
                    h = (s["v"].sqrt() / (1 - beta2 ** s["t"]) ** 0.5) + eps
                    m = s["m"]
                    if p.dim() > 1:
                        k = int(p.numel() * fraction)
                        m = torch.where(m.abs() >= torch.topk(m.abs().view(-1), k)[0].min(), m, 0)
                    p.data.add_(-lr / (1 - beta1 ** s["t"]) * m / h)

            def zero_grad(self):
                for p in params:
                    p.grad = None

        return Reference()

    mine = _steps(lambda ps: MoFO(ps, lr=lr, weight_decay=decay, fraction=fraction))
    theirs = _steps(lambda ps: reference(list(ps)))
    assert all(torch.allclose(a, b, atol=1e-7, rtol=0) for a, b in zip(mine, theirs))

    torch.manual_seed(0)
    net = torch.nn.Linear(16, 12)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = MoFO(net.parameters(), lr=lr, fraction=fraction)
    net(torch.randn(4, 16)).pow(2).mean().backward()
    optimizer.step()
    weight, bias = ((p.detach() != b).sum().item() for p, b in zip(net.parameters(), before))
    assert weight == int(0.25 * 16 * 12) and bias == 12  # the matrix: its top quarter; the bias: whole


def test_mofo_trains_the_built_in_job_and_is_refused_where_tensors_are_sharded(compose):
    parts = api.build(compose("module=mofo"))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert isinstance(parts.trainer.optimizers[0], MoFO) and parts.trainer.global_step == 2
    with pytest.raises(ConfigError, match=r"^module.optimizer=mllmft.optim.MoFO filters each whole tensor, and fsdp2"):
        api.build(compose("module=mofo", "hardware=fsdp2_cpu"))
    with pytest.raises(ConfigError, match=r"^module.optimizer.fraction=0"):
        api.build(compose("module=mofo", "module.optimizer.fraction=0"))
