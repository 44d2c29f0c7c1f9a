"""lightning_seg.models"""
