"""genorigin.export"""
