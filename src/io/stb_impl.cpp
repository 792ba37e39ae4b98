// Compiles the implementations of the stb single-file libraries once, in
// this translation unit only. The library decodes, resizes and encodes
// images with them.

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
