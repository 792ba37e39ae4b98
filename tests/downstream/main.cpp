#include <iostream>

#include <ddpm/gaussian_diffusion.h>
#include <torch/torch.h>

int main() {
  torch::manual_seed(0);
  ddpm::GaussianDiffusion diffusion(
      ddpm::Unet(ddpm::UnetOptions(8).dim_mults({1, 2}).channels(1)),
      ddpm::GaussianDiffusionOptions(8).timesteps(10));
  auto images = diffusion->sample(2);
  std::cout << "sampled " << images.size(0) << " x " << images.size(1)
            << " x " << images.size(2) << " x " << images.size(3) << "\n";
  return 0;
}
