# item 9: a syntax error
def f(x)
    return x
