"""The domain: what a qube is (model, names, labels), how it is named to
the engine (spec), the Context with its typed seams, and the ports that the
rooms above ask of the lifecycle. It depends only on the foundations and
the infrastructure below it."""
