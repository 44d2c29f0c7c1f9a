"""lightning_seg.tasks"""
