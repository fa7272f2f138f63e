"""The keys a TF2 object-based checkpoint stores beside the variables, and how a variable's key ends.

Apart from `object_graph` so that listing or writing a TF1 bundle, which only asks whether these keys are
there, does not import the graph's parser and its protobuf messages."""

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"  # the bundle key the serialized graph is stored under
ATTRIBUTE_MARKER = "/.ATTRIBUTES/"  # between an object's path and the name of its saved attribute
ATTRIBUTE_SUFFIX = ATTRIBUTE_MARKER + "VARIABLE_VALUE"  # the key of a tf.Variable's value
