"""Numeric constants of ``fla.ops.utils.constant``."""

# 1 / ln(2) rounded to the nearest fp32 value (0x3FB8AA3B), for exp/log base conversion.
# Source: fla/ops/utils/constant.py:L4-L6 (fla 0.4.0)
RCP_LN2 = 1.4426950216
