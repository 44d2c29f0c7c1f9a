"""lightning_seg.evaluation"""
