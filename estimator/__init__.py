"""block.estimator"""
