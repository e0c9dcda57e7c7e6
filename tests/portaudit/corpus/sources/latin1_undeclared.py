# item 9: latin-1 bytes without a declaration: café
def f(x):
    return x
