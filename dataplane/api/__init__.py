"""The Infer gRPC API: the edge where protobuf meets the data plane's own types.

convert     proto <-> dataplane.chat, both directions, in one place
validation  field-by-field checks that name the offending field
status      the one table from errors to gRPC status codes
pipeline    the steps of a request: authenticate, route, dispatch, account, record
service     the InferService servicer: thin handlers over the pipeline
"""
