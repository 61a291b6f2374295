"""Downstream evaluation of pretrained encoders: kNN, linear probe and fine-tune.

The protocols are plain functions over tensors and batch iterators, so they run the same in a
Ray Train worker (`loop.eval_loop_per_worker`) and in a single process (tests, benchmarks).
"""
