"""block.operator"""
