"""lightning_seg.classic"""
