"""block.simulator"""
