"""leaderelection"""
