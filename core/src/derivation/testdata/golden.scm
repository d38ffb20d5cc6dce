;; Regenerates guix-golden.txt with the Guix 1.5.0 client's own derivation
;; code (hashing, masking, printing), independently of guixd. Run inside the
;; Guix root:  LC_ALL=C.UTF-8 chroot ROOT guile --no-auto-compile golden.scm
;; Strings stay ASCII: the client hashes through a port whose encoding is not
;; UTF-8, so non-ASCII text would not give the daemon's hashes.
(fluid-set! %default-port-encoding "UTF-8")
(use-modules (guix derivations) (guix store) (gcrypt hash) (guix base16)
             (rnrs bytevectors) (ice-9 match) (srfi srfi-1))

(define make-derivation (@@ (guix derivations) make-derivation))
(define make-derivation-output (@@ (guix derivations) make-derivation-output))
(define make-derivation-input (@@ (guix derivations) make-derivation-input))
(define drv->bv (@@ (guix derivations) derivation->bytevector))

(define (text-path name text refs)
  (store-path (string-append "text" (string-concatenate (map (lambda (r) (string-append ":" r)) (sort refs string<?))))
              (sha256 (string->utf8 text)) name))

(define (show label x) (format #t "~a=~a~%" label x))

(define sh "/gnu/store/00000000000000000000000000000000-bash/bin/sh")
(define bash "/gnu/store/00000000000000000000000000000000-bash")

;; A: fixed-output, flat sha256 of "hello".
(define a-hash (sha256 (string->utf8 "hello")))
(define a-out (fixed-output-path "src.tar.gz" a-hash #:hash-algo 'sha256 #:recursive? #f))
(define a (make-derivation
           `(("out" . ,(make-derivation-output a-out 'sha256 a-hash #f)))
           '() (list bash) "x86_64-linux" sh '("-c" "fetch")
           `(("out" . ,a-out) ("url" . "https://example.org/src.tar.gz"))
           #f))
(define a-text (utf8->string (drv->bv a)))
(define a-path (text-path "src.tar.gz.drv" a-text (list bash)))
(show "A_OUT" a-out)
(show "A_TEXT" a-text)
(show "A_PATH" a-path)
(show "A_HASH" (bytevector->base16-string (derivation-hash a)))

;; Recursive sha512 FOD, to exercise the r: path.
(define r-hash (sha512 (string->utf8 "tree")))
(define r-out (fixed-output-path "tree" r-hash #:hash-algo 'sha512 #:recursive? #t))
(show "R_OUT" r-out)

;; B: regular, two outputs, input A, env with escapes.
(define (regular name inputs srcs env-extra outputs)
  (let* ((env (append (map (lambda (o) (cons o "")) outputs) env-extra))
         (env (sort env (lambda (x y) (string<? (car x) (car y)))))
         (masked (make-derivation
                  (map (lambda (o) (cons o (make-derivation-output "" #f #f #f))) outputs)
                  inputs srcs "x86_64-linux" sh '("-c" "build \"it\"\n\tnow")
                  env #f))
         (h (derivation-hash masked))
         (paths (map (lambda (o) (cons o (output-path o h name))) outputs))
         (env2 (map (match-lambda ((k . v) (cons k (or (assoc-ref paths k) v)))) env))
         (full (make-derivation
                (map (lambda (p) (cons (car p) (make-derivation-output (cdr p) #f #f #f))) paths)
                inputs srcs "x86_64-linux" sh '("-c" "build \"it\"\n\tnow")
                env2 #f))
         (text (utf8->string (drv->bv full)))
         (refs (append srcs (map (lambda (i) (derivation-file-name (derivation-input-derivation i))) inputs)))
         (path (text-path (string-append name ".drv") text refs)))
    (values full text path h)))

(define a* (make-derivation (derivation-outputs a) '() (list bash) "x86_64-linux" sh '("-c" "fetch")
                            (derivation-builder-environment-vars a) a-path))
(define-values (b b-text b-path b-h)
  (regular "hello-2.12" (list (make-derivation-input a* '("out"))) (list bash)
           '(("note" . "quote\" back\\ nl\n cr\r tab\t end")) '("doc" "out")))
(show "B_MASKED_HASH" (bytevector->base16-string b-h))
(show "B_TEXT" b-text)
(show "B_PATH" b-path)
(define b* (make-derivation (derivation-outputs b) (derivation-inputs b) (derivation-sources b)
                            (derivation-system b) (derivation-builder b) (derivation-builder-arguments b)
                            (derivation-builder-environment-vars b) b-path))
(show "B_HASH" (bytevector->base16-string (derivation-hash b*)))
(define-values (c c-text c-path c-h)
  (regular "app" (list (make-derivation-input a* '("out")) (make-derivation-input b* '("doc" "out"))) '() '() '("out")))
(show "C_MASKED_HASH" (bytevector->base16-string c-h))
(show "C_TEXT" c-text)
(show "C_PATH" c-path)
