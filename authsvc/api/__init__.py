"""gRPC servicers: protobuf in, domain call, protobuf out. Nothing else lives here."""
