"""moopt_lic: train CompressAI learned image compression codecs with moopt balancers.

The adapter arrives with the trainer issue; this package is a placeholder for now.
"""
