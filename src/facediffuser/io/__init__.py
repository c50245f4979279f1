"""The product's input and output: reference photos and requests checked before a model loads, output files
and folders, model loading and conversion, weight files, the tokenizer, the flags of a command.
"""
