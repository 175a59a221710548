package main

import (
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// chromium returns the path of a Chromium binary to render reports with.
// When it is missing and the test runs as root under CI, it installs
// Debian's chromium package; otherwise a missing Chromium fails the test
// under CI and skips it elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	find := func() string {
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
			if p, err := exec.LookPath(name); err == nil {
				return p
			}
		}
		return ""
	}
	if p := find(); p != "" {
		return p
	}
	if _, err := exec.LookPath("apt-get"); err == nil && testenv.Required() && os.Geteuid() == 0 {
		t.Log("chromium is missing: installing Debian's chromium package")
		for _, args := range [][]string{
			{"-o", "DPkg::Lock::Timeout=300", "update"},
			{"-o", "DPkg::Lock::Timeout=300", "install", "-y", "chromium"},
		} {
			cmd := exec.CommandContext(t.Context(), "apt-get", args...)
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("apt-get %v: %v\n%s", args, err, tail(out, 2000))
			}
		}
		if p := find(); p != "" {
			return p
		}
	}
	const msg = "chromium not found: the report is checked by rendering it headless; install it with apt-get update && apt-get install -y chromium"
	if testenv.Required() {
		t.Fatal(msg + " (required under CI; the test installs it itself when run as root)")
	}
	t.Skip(msg)
	return ""
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// screenshot renders the HTML file at path in headless Chromium, with
// every host name unresolvable (so that a page needing the network shows
// what it would show offline), and returns the screenshot.
func screenshot(t *testing.T, path string) image.Image {
	t.Helper()
	chrome := chromium(t)
	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	dir := t.TempDir()
	shot := filepath.Join(dir, "report.png")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chrome,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
		"--user-data-dir="+filepath.Join(dir, "profile"),
		"--window-size=1280,5200", "--screenshot="+shot, "file://"+abs)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "chromium: %s", tail(out, 4000))
	f, err := os.Open(shot)
	require.NoError(t, err, "chromium wrote no screenshot: %s", tail(out, 4000))
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	if dst := os.Getenv("DEMO_SCREENSHOT"); dst != "" {
		// For looking at it: DEMO_SCREENSHOT=/tmp/report.png go test
		b, _ := os.ReadFile(shot)
		_ = os.WriteFile(dst, b, 0o644)
	}
	return img
}

// inked is what a screenshot shows: the share of pixels that are not
// white, how many distinct colours it has, and how many pixels are close
// to each given colour.
func inked(img image.Image, near ...color.RGBA) (share float64, colours int, nearCount []int) {
	seen := map[color.RGBA]bool{}
	nearCount = make([]int, len(near))
	b := img.Bounds()
	ink := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			c := color.RGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(bl >> 8), A: 0xff}
			seen[c] = true
			if c.R < 0xf0 || c.G < 0xf0 || c.B < 0xf0 {
				ink++
			}
			for i, n := range near {
				if closeTo(c, n) {
					nearCount[i]++
				}
			}
		}
	}
	return float64(ink) / float64(b.Dx()*b.Dy()), len(seen), nearCount
}

func closeTo(a, b color.RGBA) bool {
	d := func(x, y uint8) int {
		if x > y {
			return int(x - y)
		}
		return int(y - x)
	}
	return d(a.R, b.R)+d(a.G, b.G)+d(a.B, b.B) < 60
}

// requireRendered renders the report at path and checks that the page is
// not blank: text, tables and both runs' chart lines are on it.
func requireRendered(t *testing.T, path string) {
	t.Helper()
	img := screenshot(t, path)
	share, colours, near := inked(img, implColors[implLibrary], implColors[implNaive])
	t.Logf("screenshot %v: %.1f%% of pixels inked, %d colours, %d pixels of the library's colour, %d of the textbook's",
		img.Bounds().Size(), 100*share, colours, near[0], near[1])
	require.Greater(t, share, 0.02, "the page is (nearly) blank")
	require.Greater(t, colours, 50, "the page has almost no colours: no charts drawn")
	require.Greater(t, near[0], 3000, "no line of the library's colour")
	require.Greater(t, near[1], 3000, "no line of the textbook's colour")
}
