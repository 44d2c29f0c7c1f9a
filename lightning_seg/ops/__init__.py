"""lightning_seg.ops"""
