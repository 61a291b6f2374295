"""One module per kind of data source; each defines `SOURCE`, a `DataSource`.

The registry (`workloads/data/registry.py`) finds every module here, so adding a data source
(a new built-in dataset, say) is adding one file that ends with `SOURCE = ...`.
"""
