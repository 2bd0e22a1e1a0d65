"""block.scheduler"""
