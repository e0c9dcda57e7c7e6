# -*- coding: latin-1 -*-
# a valid PEP 263 file (café): parsed, not refused
def f(x):
    """Source: up/m.py:L1-L2 (up 1.0)"""
    return x
