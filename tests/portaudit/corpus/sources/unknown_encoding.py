# -*- coding: no-such-codec -*-
def f(x):
    return x
