"""An independent PyTorch reference of the paper's ImageNet RedNet.

Written for the tests from the paper and its reference configuration, not
from this package: explicit `padding=1` in the stem, `nn.MaxPool2d(3, 2,
padding=1)`, batch norm with epsilon 1e-5, the kernel generator's 1x1
reduction without a bias (batch norm follows it), involution by
`nn.Unfold`. Module names follow the authors' (mmcls) checkpoints, so that
`state_dict()` has their keys: `stem.*`, `layer1.0.conv1.weight`,
`layer1.0.conv2.conv1.conv.weight`, `layer1.0.bn1.running_mean`, ... and
`fc.*` for the classifier (`head.fc.*` in a checkpoint).
"""

import torch
from torch import nn

DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class ConvModule(nn.Module):
    """mmcv's ConvModule: `conv`, then `bn` and ReLU where asked."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, bias=False, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=bias)
        if norm:
            self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return torch.relu(x) if self.act else x


class Involution(nn.Module):
    def __init__(self, channels, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.group_channels = 16
        self.groups = channels // self.group_channels
        self.conv1 = ConvModule(channels, channels // 4, 1)
        self.conv2 = ConvModule(channels // 4, kernel_size**2 * self.groups, 1, bias=True, norm=False, act=False)
        self.avgpool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, stride)

    def forward(self, x):
        weight = self.conv2(self.conv1(self.avgpool(x)))
        b, c, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size**2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size**2, h, w)
        return (weight * out).sum(dim=3).view(b, -1, h, w)


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=1e-5)
        self.conv2 = Involution(planes, 7, stride)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if hasattr(self, "downsample") else x
        return torch.relu(out + identity)


class RedNet(nn.Module):
    def __init__(self, depth, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            ConvModule(3, 32, 3, stride=2, padding=1),
            Involution(32, 3, 1),
            nn.BatchNorm2d(32, eps=1e-5),
            nn.ReLU(),
            ConvModule(32, 64, 3, stride=1, padding=1),
        )
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin = 64
        for index, blocks in enumerate(DEPTHS[depth]):
            planes = 64 * 2**index
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(cin, planes, 2 if index > 0 and block == 0 else 1))
                cin = planes * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        for index in range(4):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def randomized(depth, seed=0, num_classes=1000):
    """A reference RedNet with random weights and non-trivial batch norm
    statistics (so that a wrong epsilon or a missed statistic shows)."""
    torch.manual_seed(seed)
    model = RedNet(depth, num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()
