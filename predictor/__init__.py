"""block.predictor"""
