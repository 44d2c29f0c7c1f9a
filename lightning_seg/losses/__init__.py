"""lightning_seg.losses"""
