"""The application built on the library: the `funcnet` command (`cli`), the models it trains
(`models`) and its figures (`plots`).

Nothing in the library imports this package; `import funcnet` does not load it.
"""
