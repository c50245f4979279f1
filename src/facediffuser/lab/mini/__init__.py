"""The mini Face-diffuser: small models trained on the procedural world (:mod:`facediffuser.lab.world`).

:mod:`.build` runs the staged recipe (``facediffuser mini build``), :mod:`.vae` trains the small VAE, :mod:`.data`
reads the world's renders. Importing this package loads nothing heavy.
"""
