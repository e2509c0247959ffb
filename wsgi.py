import gc

from portal import create_app

app = create_app()
# What start-up made lives as long as the process: keep it out of every garbage collection
# (a full one would otherwise scan some 150,000 objects, stalling a request for tens of ms).
gc.freeze()
