"""VGG16 features for the optional perceptual reconstruction loss of the encoder."""

import keras


def vgg16_features(weights_path, resolution, layer="block3_conv3"):
    """A frozen model: images (B, R, R, 3) in [-1, 1] -> VGG16 `layer` activations.

    `weights_path` is a local VGG16 notop weights file (this library never downloads). Images
    smaller than VGG16's 32 px minimum are upsampled to 32 px first.
    """
    size = max(resolution, 32)
    vgg = keras.applications.VGG16(include_top=False, weights=weights_path, input_shape=(size, size, 3))
    vgg.trainable = False
    images = keras.Input((resolution, resolution, 3))
    x = keras.layers.Resizing(size, size)(images) if size != resolution else images
    x = keras.applications.vgg16.preprocess_input((x + 1.0) * 127.5)  # caffe-style BGR, mean-subtracted
    features = keras.Model(vgg.input, vgg.get_layer(layer).output)(x)
    model = keras.Model(images, features, name="vgg16_features")
    model.trainable = False
    return model
