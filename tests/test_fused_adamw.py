"""module.optimizer.fused (the default) / foreach: AdamW's fused kernel and its multi-tensor form end where
its per-tensor loop ends (fp32, within float round-off)."""

import pytest

from mllmft import api


def _fit(compose, *overrides) -> dict:
    parts = api.build(compose("strategy=full", "trainer.max_steps=3", *overrides))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    return {n: p.detach() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_adamws_kernels_end_where_its_loop_ends(compose, kernel):
    loop = _fit(compose, "module.optimizer.fused=false", "+module.optimizer.foreach=false")
    other = _fit(compose, *(["module.optimizer.fused=false", "+module.optimizer.foreach=true"] * (kernel == "foreach")))
    assert max((loop[k] - other[k]).abs().max().item() for k in loop) <= 1e-6


def test_a_kernel_switch_is_true_or_false_and_mofo_has_none(compose):
    with pytest.raises(Exception, match=r"module.optimizer.fused='yes'; expected true or false"):
        api.build(compose("module.optimizer.fused=yes"))
    with pytest.raises(Exception, match=r"module.optimizer.fused=true: MoFO filters and steps each tensor on its own"):
        api.build(compose("module=mofo", "module.optimizer.fused=true")).module.configure_optimizers()
