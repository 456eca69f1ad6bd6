// Verifies a leaf certificate with Go's crypto/x509, the verifier of SPIRE, istiod and
// Linkerd's controller, independently of hsmca's own code.
//
// usage: svid_verify ROOTS.pem CHAIN.pem LEAF.pem [DNS-NAME]
//
// ROOTS.pem holds the trust anchors, CHAIN.pem the certificates the peer presents above its
// leaf (extra ones, such as the root, are ignored by path building), LEAF.pem the leaf.
// Verifies it for server and for client authentication, and for DNS-NAME when given.
// Prints "ok" or Go's refusal; exits 0 or 1 (2 on bad usage or unreadable input).
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func load(path string) []*x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var certificates []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certificates
		}
		certificate, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(2)
		}
		certificates = append(certificates, certificate)
	}
}

func main() {
	if len(os.Args) != 4 && len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: svid_verify ROOTS.pem CHAIN.pem LEAF.pem [DNS-NAME]")
		os.Exit(2)
	}
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	for _, root := range load(os.Args[1]) {
		roots.AddCert(root)
	}
	for _, certificate := range load(os.Args[2]) {
		intermediates.AddCert(certificate)
	}
	leaves := load(os.Args[3])
	if len(leaves) != 1 {
		fmt.Fprintln(os.Stderr, "LEAF.pem must hold one certificate")
		os.Exit(2)
	}
	options := x509.VerifyOptions{Roots: roots, Intermediates: intermediates}
	if len(os.Args) == 5 {
		options.DNSName = os.Args[4]
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		options.KeyUsages = []x509.ExtKeyUsage{usage}
		if _, err := leaves[0].Verify(options); err != nil {
			fmt.Printf("refused: %v\n", err)
			os.Exit(1)
		}
	}
	fmt.Println("ok")
}
