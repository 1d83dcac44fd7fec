"""workqueue"""
