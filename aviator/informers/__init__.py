"""informers"""
