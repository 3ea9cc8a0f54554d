"""module.optimizer.fused: AdamW's fused kernel (null, the default, where Lightning lets it clip) and its
multi-tensor form end where its per-tensor loop ends (fp32, within float round-off); where Lightning's mixed
precision would refuse to clip a fused optimizer's gradients the default is the loop and true is refused."""

import pytest

from mllmft import api
from mllmft.errors import ConfigError


def _fit(compose, *overrides) -> dict:
    parts = api.build(compose("strategy=full", "trainer.max_steps=3", *overrides))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert parts.trainer.optimizers[0].defaults["fused"] is (overrides == ())  # null: fused here (fp32)
    return {n: p.detach() for n, p in parts.backbone.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_adamws_kernels_end_where_its_loop_ends(compose, kernel):
    loop = _fit(compose, "module.optimizer.fused=false", "+module.optimizer.foreach=false")
    other = _fit(compose, *(["module.optimizer.fused=false", "+module.optimizer.foreach=true"] * (kernel == "foreach")))
    assert max((loop[k] - other[k]).abs().max().item() for k in loop) <= 1e-6


def test_mixed_precision_with_clipping_takes_the_loop_and_refuses_fused(compose):
    parts = api.build(compose("strategy=full", "hardware.precision=bf16-mixed", "trainer.max_steps=1"))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert not parts.trainer.optimizers[0].defaults["fused"]
    with pytest.raises(ConfigError, match=r"module.optimizer.fused=true with hardware.precision=bf16-mixed and "):
        api.build(compose("hardware.precision=bf16-mixed", "module.optimizer.fused=true"))


def test_a_kernel_switch_is_true_or_false_and_mofo_has_none(compose):
    with pytest.raises(Exception, match=r"module.optimizer.fused='yes'; expected true or false"):
        api.build(compose("module.optimizer.fused=yes"))
    with pytest.raises(Exception, match=r"module.optimizer.fused=true: MoFO filters and steps each tensor on its own"):
        api.build(compose("module=mofo", "module.optimizer.fused=true")).module.configure_optimizers()


def test_the_multi_tensor_form_asked_for_leaves_fused_unset_and_aliases_of_mixed_precision_count(compose):
    parts = api.build(compose("strategy=full", "trainer.max_steps=1", "+module.optimizer.foreach=true"))
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)  # torch refuses fused and foreach together
    assert parts.trainer.optimizers[0].defaults["foreach"] and not parts.trainer.optimizers[0].defaults["fused"]
    with pytest.raises(ConfigError, match=r"module.optimizer.fused=true with hardware.precision=bf16 and "):
        api.build(compose("hardware.precision=bf16", "module.optimizer.fused=true"))
