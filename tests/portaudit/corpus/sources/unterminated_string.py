# item 9: never closed
def f(x):
    """Source: up/m.py:L1-L2 (up 1.0)
    return x
