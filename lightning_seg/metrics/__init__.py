"""lightning_seg.metrics"""
