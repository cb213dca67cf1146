"""genorigin.runtime"""
