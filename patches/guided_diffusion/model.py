"""Build a :class:`SeamUNetModel` for any channel count (upstream's builder hard-codes 3).

``MODEL_DEFAULTS`` mirrors upstream's ``model_and_diffusion_defaults`` model
keys, plus ``in_channels``/``out_channels`` (``out_channels=0`` means "same as
``in_channels``"; doubled when ``learn_sigma``) and ``num_classes``
(0 = unconditional). ``channel_mult=""`` picks the multipliers for the image
size; ``attention_resolutions`` are given as image_size / resolution, as
upstream's flags are.
"""

from __future__ import annotations

from patches.guided_diffusion.unet import SeamUNetModel, channel_mult_for

MODEL_DEFAULTS = dict(
    image_size=64,
    in_channels=4,
    out_channels=0,
    num_channels=128,
    num_res_blocks=2,
    channel_mult="",
    attention_resolutions="16,8",
    num_heads=4,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    resblock_updown=False,
    dropout=0.0,
    num_classes=0,
    use_checkpoint=False,
    use_fp16=False,
    use_new_attention_order=False,
)
#: One phrase per flag of ``MODEL_DEFAULTS`` (meaning, units), for ``--help``.
MODEL_HELP = dict(
    image_size="side of the square input, pixels",
    in_channels="input channels of the UNet",
    out_channels="output channels of the UNet (0 = in_channels; doubled with learn_sigma)",
    num_channels="base channel count of the UNet (a positive multiple of 32)",
    num_res_blocks="residual blocks per resolution level",
    channel_mult="comma-separated channel multipliers per level (empty: upstream's choice for image_size)",
    attention_resolutions="comma-separated downsampling factors (image_size / resolution) with self-attention",
    num_heads="attention heads per attention block",
    num_head_channels="channels per attention head (-1: use num_heads instead)",
    num_heads_upsample="attention heads in the decoder (-1 = num_heads)",
    use_scale_shift_norm="timestep embedding scales and shifts the normalised features (FiLM) instead of adding",
    resblock_updown="down/upsample with residual blocks instead of plain convolution/interpolation",
    dropout="dropout probability in the residual blocks, a fraction",
    num_classes="class labels of a class-conditional model (0 = unconditional)",
    use_checkpoint="gradient checkpointing: less memory, more compute",
    use_fp16="float16 mixed precision with loss scaling (upstream's MixedPrecisionTrainer)",
    use_new_attention_order="split q, k, v before the heads (QKVAttention) instead of the legacy order",
)


def create_seam_model(*, image_size, in_channels, out_channels, num_channels, num_res_blocks, channel_mult,
                      attention_resolutions, num_heads, num_head_channels, num_heads_upsample,
                      use_scale_shift_norm, resblock_updown, dropout, num_classes, use_checkpoint,
                      use_fp16, use_new_attention_order, learn_sigma=False) -> SeamUNetModel:
    """A :class:`SeamUNetModel` from ``MODEL_DEFAULTS``-style keyword arguments."""
    if num_channels <= 0 or num_channels % 32:
        raise ValueError(f"num_channels={num_channels}: upstream's GroupNorm(32) needs a positive multiple of 32")
    if channel_mult:
        mult = tuple(float(m) if "." in m else int(m) for m in str(channel_mult).split(","))
    else:
        mult = channel_mult_for(image_size)
    attention_ds = tuple(image_size // int(r) for r in str(attention_resolutions).split(",") if r.strip())
    out = out_channels or in_channels
    return SeamUNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=out * 2 if learn_sigma else out,
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_ds,
        dropout=dropout,
        channel_mult=mult,
        num_classes=num_classes or None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )
