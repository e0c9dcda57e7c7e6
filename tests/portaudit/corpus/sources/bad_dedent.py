# item 9: inconsistent dedent
def f(x):
        y = x
    return y
